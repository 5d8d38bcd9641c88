"""The model runner: batch inputs, the forward pass, sampling and structured-output masks."""
