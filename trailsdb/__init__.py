"""Trail sources -> normalised trails -> one compiled artifact, published atomically.

Must not be imported by the packet path, except through matchers/ to load a compiled artifact.
"""
