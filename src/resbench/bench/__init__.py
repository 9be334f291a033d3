"""Speed: training throughput of one configuration against the device's peak."""
