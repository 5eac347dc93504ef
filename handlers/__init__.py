"""What reacts to events and what each working state does: file events, steps, agent backends."""
