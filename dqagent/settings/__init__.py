"""Settings: every setting declared once, parsed and validated; where values come from;
DRAMATIQ_COMMAND's shape.
"""
