"""Engines: warm models behind one small interface, fed by a dynamic batcher."""
