"""Step 1: reading instruction data, reducing rows to a first turn, splitting them, and the Hub-shaped output."""
