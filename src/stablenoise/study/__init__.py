"""A blind A/B human preference study over a bench run's images, its statistics, and the demo view."""
