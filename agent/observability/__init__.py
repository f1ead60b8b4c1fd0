"""What a running process says about itself: Prometheus metrics (`metrics`) and structured
logs (`logs`)."""
