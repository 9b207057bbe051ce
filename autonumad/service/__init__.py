"""The daemon around the pass: loop, config, metrics, sd_notify, logging."""
