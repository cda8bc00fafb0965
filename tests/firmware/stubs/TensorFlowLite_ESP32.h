// Stub: the TensorFlowLite_ESP32 library's umbrella header (pulls the library in).
#pragma once
