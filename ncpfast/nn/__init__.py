"""Building blocks of the VAEs: distributions and NVAE-style residual cells."""
