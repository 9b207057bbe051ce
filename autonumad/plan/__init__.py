"""What a pass decides: pure policy over the snapshot and the history."""
