"""planforge.exporter"""
