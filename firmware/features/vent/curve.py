# The vent's opening curve: (x, y) points, x = where humidity stands between
# close_at (0) and full_at (1), y = how far the flap opens beyond min_opening
# (0: at min_opening, 1: fully open). Linear in between points.
POINTS = ((0.0, 0.0), (1.0, 1.0))
