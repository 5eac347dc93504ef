"""The state machine and the daemon around it."""
