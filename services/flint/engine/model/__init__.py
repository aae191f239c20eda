"""Llama-family model implementation."""
