"""Run folders: every file name, typed reading and atomic writing of a run's files, the model card, the
plots, and run folders listed and compared.
"""
