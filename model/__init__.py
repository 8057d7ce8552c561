"""configs -> megatron-core specs; the Gengram module; attention backend choice; parameter and FLOP counting;
optimizer parameter groups and per-layer statistics."""
