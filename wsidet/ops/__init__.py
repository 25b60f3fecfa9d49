"""Pure building blocks of the methods' encoders and decoders.

Local maxima, fixed filters, deconvolution, vote accumulation, training targets and stain
colour vectors: arrays in, arrays out, no state.
"""
