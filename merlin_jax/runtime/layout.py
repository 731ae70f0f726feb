"""The names of a workdir's entries, in one place (checkpointing writes them; export and
workdir read them)."""

CHECKPOINTS = "checkpoints"   # the train state, every checkpoint_every steps and at a stop
BEST = "best"                 # the model selected on target validation
EXPORT = "model.safetensors"  # what a run hands over: the evaluated model, flat
