"""What a pass does: the budgeted executor and the syscalls and knob writes it uses."""
