"""glyph_rt's ops: each file holds one op's preparation, dispatch and reference."""
