"""`zoo tune`: a recipe's settings searched with Optuna, each trial an ordinary run folder."""
