"""The multi-task network: a shared TDNN trunk and one head per task (``output-<i>``)."""
