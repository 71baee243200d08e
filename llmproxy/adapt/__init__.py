"""
Per-target body shaping: pure steps applied to a routed body before it is
translated and sent.
"""
