"""The offline demo: its instruction data, its tiny Llama and its pipeline recipe."""
