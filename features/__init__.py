"""Freshline's pure domain: catalog, tile math, aggregators, sketches, CUSUM, keys and codecs.

Nothing here does I/O or imports Kafka, Redis, boto3 or Ray. Import names from their modules
(``features.catalog``, ``features.tiles``, ...): this file stays empty so that importing the light
modules (``features.errors``, which the CLI needs to start) does not import numpy or pydantic.
"""
