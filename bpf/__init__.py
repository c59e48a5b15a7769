"""Kernel programs (*.bpf.c), shipped as package data and compiled by bcc at start."""
