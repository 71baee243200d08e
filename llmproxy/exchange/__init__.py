"""
One client request's trip: attempts over its route, waits, keepalives, the
relay of the answer, and what the client sees.
"""
