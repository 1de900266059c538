"""The codec layer: the Orpheus token layout, SNAC decoding, and audio containers."""
