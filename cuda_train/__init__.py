"""The PyTorch trainer (CUDA for the 8xH100 record run, CPU for tests). See docs/DESIGN.md for the module map."""
