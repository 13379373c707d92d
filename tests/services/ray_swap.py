"""A generator actor for the Ray tests (imported by Ray's workers by name): `GeneratorActor` with
`process_faults.hand_over_weights_mid_step` installed in its process."""

from rlx.services.generator_ray import GeneratorActor
from tests.services.process_faults import hand_over_weights_mid_step


class SwappingActor(GeneratorActor):
    def __init__(self, *args):
        hand_over_weights_mid_step()
        super().__init__(*args)
