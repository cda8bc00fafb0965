"""The live distributed system: devices, fusion and source nodes talking NoNN frames over MQTT.

Edge-light on purpose: nothing here imports TensorFlow or Keras (LiteRT, numpy, paho-mqtt only).

Modules, in data-flow order:

- ``protocol``  wire format (``Frame``, ``encode``, ``Decoder``, ``deployment_id``, ``Topics``)
- ``models``    deployment.json (``load_deployment``) and the shared int8 maths (``requantise``)
- ``mqtt``      one connection per node (``BrokerConfig.from_url``, ``Connection``)
- ``device``, ``fusion``, ``source``  the nodes (``*Core`` = logic without MQTT, ``*Node`` = live)
- ``offline``   the same int8 system in one process (``OfflineSystem``), the reference
- ``broker``    brokers we start (embedded amqtt, mosquitto); ``demo`` and ``dashboard``
- ``vectors``   writes tests/vectors/frames.json, shared with the C implementation
"""
