"""Training recipes: the shell scripts that train and install the bundled checkpoint (train_default.sh, then
train_long.sh, then install_default.sh), explore variants of it (explore_recipes.sh) and profile a training step
(profile_train_step.sh); and `python -m recipes.train_compare` (dense vs Lighthouse training at equal tokens).
Run from the repository root; a package only so that train_compare runs with -m and can be imported."""
