"""planforge.compare"""
