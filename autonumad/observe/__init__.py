"""What a pass reads: the immutable snapshot, the hotness trackers (DAMON, soft-dirty)."""
