// Stub: TFLM's flatbuffer schema header (TFLITE_SCHEMA_VERSION deliberately left out).
#pragma once
