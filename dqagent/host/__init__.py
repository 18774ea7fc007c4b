"""The guard's host reads: PSI, /proc/meminfo, the workers' memory.
"""
