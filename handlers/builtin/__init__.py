"""The offline built-in agent."""
