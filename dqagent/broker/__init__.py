"""The only readers and writers of the broker's Redis: demand, and fleet mode's records.
"""
