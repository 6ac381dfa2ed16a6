"""Scale-out through torch.distributed: joining torchrun's process group, sharding and agreeing across
ranks, and FSDP2.
"""
