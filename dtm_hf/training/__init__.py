"""Step 2: training one sub-model per cluster with TRL's SFTTrainer: planning, the trainer, chat templates, cards."""
