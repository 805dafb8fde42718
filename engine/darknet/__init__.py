"""darknet"""
