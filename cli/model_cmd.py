"""(being written)"""
COMMANDS = []
