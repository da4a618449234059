"""Offline batch inference in the OpenAI Batch format: input parsing, chunking, output lines, files."""
