"""What differs between the transformers releases we support, in one place for the tests."""


def enable_checkpointing(model, use_reentrant: bool | None = None) -> None:
    """Turn on activation checkpointing under the name this transformers has: 5.2x calls it
    `activation_checkpointing_enable`, the oldest release we support (5.19) `gradient_checkpointing_enable`."""
    kwargs = None if use_reentrant is None else {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        assert model.is_activation_checkpointing
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        assert model.is_gradient_checkpointing
