"""The foundation layer: config, errors, events, states, status, results and the journal."""
