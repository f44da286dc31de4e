"""What differs between the timm and torch releases timm-cct supports, in one place."""
import torch

try:
    from timm.layers import is_exporting
except ImportError:  # timm < 1.0.31: torch's own test (torch >= 2.7), else never
    _HAS_IS_EXPORTING = hasattr(torch.compiler, 'is_exporting')

    @torch.jit.unused
    def _torch_is_exporting() -> bool:
        return _HAS_IS_EXPORTING and torch.compiler.is_exporting()

    def is_exporting() -> bool:
        if torch.jit.is_scripting():
            return False
        return _torch_is_exporting()

try:  # timm >= 1.0.31 keeps the model's current input size apart from its pretrained cfg
    from timm.models._input import update_model_input_size
except ImportError:
    update_model_input_size = None



def register_load_state_dict_pre_hook(module: torch.nn.Module, hook) -> None:
    """``module.register_load_state_dict_pre_hook(hook)`` (torch >= 2.5; torch 2.4 has it under a private name)."""
    if hasattr(module, 'register_load_state_dict_pre_hook'):
        module.register_load_state_dict_pre_hook(hook)
    else:
        module._register_load_state_dict_pre_hook(hook, with_module=True)


__all__ = ['is_exporting', 'update_model_input_size', 'register_load_state_dict_pre_hook']
