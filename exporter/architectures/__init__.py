"""planforge.exporter.architectures"""
