"""The streaming merge route: LoRA sub-models served to mergekit tensor by tensor, without merged copies."""
