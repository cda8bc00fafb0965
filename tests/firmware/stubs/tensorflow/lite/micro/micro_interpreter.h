// Stub of TensorFlow Lite Micro's interpreter API used by the generated firmware.
#pragma once
#include <cstddef>
#include <cstdint>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef enum { kTfLiteNoType = 0, kTfLiteFloat32 = 1, kTfLiteUInt8 = 3, kTfLiteInt8 = 9 } TfLiteType;
typedef union {
  int8_t* int8;
  uint8_t* uint8;
  float* f;
} TfLitePtrUnion;
typedef struct {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;
typedef struct {
  TfLiteType type;
  TfLitePtrUnion data;
  TfLiteQuantizationParams params;
  size_t bytes;
} TfLiteTensor;

namespace tflite {

class MicroOpResolver {
 public:
  virtual ~MicroOpResolver();
};

struct Model {
  uint32_t version() const;
};
const Model* GetModel(const void* buf);

class MicroInterpreter {
 public:
  MicroInterpreter(const Model* model, const MicroOpResolver& op_resolver, uint8_t* tensor_arena,
                   size_t tensor_arena_size);
  TfLiteStatus AllocateTensors();
  TfLiteStatus Invoke();
  TfLiteTensor* input(size_t index);
  TfLiteTensor* output(size_t index);
  size_t arena_used_bytes() const;
};

}  // namespace tflite
