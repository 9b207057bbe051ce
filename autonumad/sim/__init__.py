"""The simulated host: a fake /proc and /sys tree whose actuators rewrite it, fake DAMON, the demo."""
