"""Hand-offs to other systems: a fused Hugging Face checkpoint, a PEFT adapter or an MLX
model (export), and the data and launch scripts for the authors' verl fork (verl) and for
ms-swift (swift). It may import models, data, method (the views) and run."""
