// The vasomim Node API. Every option object is parsed by the zod schemas in ./config.
export {
  prepareVesselMaps,
  readImage,
  vesselMap,
  vesselness,
  vesselnessToFile,
  type FileOutcome,
  type GreyImage,
  type PrepareProgress,
  type PrepareSummary,
  type VesselMap,
  type VesselnessResponse,
} from './vessels/api.js';
export {
  ConfigError,
  DEFAULT_SIGMAS,
  FilterSchema,
  MapSchema,
  VesselsJobSchema,
  type FilterConfig,
  type FilterInput,
  type MapConfig,
  type MapInput,
  type VesselsJobConfig,
  type VesselsJobInput,
} from './config/vessels.js';
export { discover, IMAGE_EXTENSIONS } from './vessels/discover.js';
export {
  batchMasks,
  guidedAlpha,
  guidedMasking,
  guidedTarget,
  maskCounts,
  randomMasking,
  type BatchMasks,
  type Mask,
  type MaskingPolicy,
} from './train/masking.js';
export { Rng, type RngState } from './train/rng.js';
export { absoluteLr, accumulation, fractionalEpoch, lrAt, type LrSchedule } from './train/schedule.js';
export {
  createModel,
  loadModel,
  randomMaskBatch,
  toMaskBatch,
  trainStep,
  type Features,
  type LoadInfo,
  type LoadModelOptions,
  type MaskBatch,
  type Model,
  type Reconstruction,
  type StepResult,
} from './model/index.js';
export {
  createSegmentor,
  loadSegmentor,
  polyLr,
  type SegmentorLoadInfo,
  type SegmentorStepResult,
  type Segmentor,
  type SegmentorConfig,
} from './model/segmentor.js';
export {
  ModelConfigSchema,
  PRESET_NAMES,
  StepOptionsSchema,
  parseModelConfig,
  type ModelConfig,
  type ModelConfigInput,
  type PresetName,
  type StepOptionsInput,
} from './config/model.js';
export {
  indexDataset,
  expandFrames,
  isManifest,
  DatasetError,
  DATA_EXTENSIONS,
  type DataSample,
  type DatasetIndex,
  type SourceReport,
} from './data/dataset.js';
export { checkDataset, checkIndex, type CheckOptions, type DataReport } from './data/check.js';
export {
  openLoader,
  DataLoader,
  type Batch,
  type EpochMetrics,
  type EpochOptions,
  type SkippedFile,
} from './data/loader.js';
export { extractFrames, type FrameRow, type FramesSummary } from './data/frames.js';
export { benchLoader, prepareBenchData, type BenchResult } from './data/bench.js';
export {
  AugmentSchema,
  DatasetSchema,
  FramesSchema,
  LoaderSchema,
  IMAGENET_MEAN,
  IMAGENET_STD,
  GREY_MEAN,
  GREY_STD,
  type AugmentConfig,
  type AugmentInput,
  type DatasetConfig,
  type DatasetInput,
  type FramesInput,
  type LoaderConfig,
  type LoaderInput,
} from './config/data.js';
export { checkImageFiles, readFrame } from './data/read.js';
export { InputFileError } from './errors.js';
export {
  binaryMetrics,
  clDice,
  confusion,
  dice,
  formatStat,
  METRIC_NAMES,
  multiClassMetrics,
  rocAuc,
  summarize,
  type BinaryMetrics,
  type ClassMetrics,
  type MetricName,
  type Stat,
} from './eval/metrics.js';
export { skeletonize, SKIMAGE_DEPARTURES } from './eval/skeleton.js';
export { fillPolygon } from './segmentation/polygon.js';
export {
  checkSegmentationSamples,
  loadSegmentationSample,
  openSegmentationDataset,
  splitSamples,
  type CocoShape,
  type LoadedSample,
  type SegmentationDataset,
  type SegmentationSample,
} from './segmentation/dataset.js';
export { vesselnessPredictor, type Prediction, type Predictor, type PredictorInput } from './eval/predictor.js';
export {
  diceCurve,
  labelsOf,
  evaluateSegmentation,
  thresholdGrid,
  type EvalProgress,
  type EvalSummary,
  type ImageResult,
  type ThresholdChoice,
} from './eval/evaluate.js';
export {
  BaselineSchema,
  EvaluateSchema,
  SegmentationDataSchema,
  SPLITS,
  type BaselineInput,
  type EvaluateConfig,
  type EvaluateInput,
  type SegmentationDataConfig,
  type SegmentationDataInput,
  type SplitName,
} from './config/segmentation.js';
export {
  pretrain,
  vesselCounts,
  NonFiniteLossError,
  type PretrainEvents,
  type PretrainResult,
  type StepRecord,
} from './train/pretrain.js';
export { groupFromEnv, launchLocal, type Group, type LaunchOptions } from './train/distributed.js';
export {
  LaunchSchema,
  PretrainSchema,
  PRESETS as PRETRAIN_PRESETS,
  RUN_PRESETS,
  resolvePretrainConfig,
  mergeConfig,
  type PretrainConfig,
  type PretrainInput,
  type RunPreset,
} from './config/pretrain.js';
export {
  trainSegmentor,
  resolveSegmentorConfig,
  SegmentorRunSchema,
  SEGMENTOR_PRESETS,
  type SegmentorRunConfig,
  type SegmentorRunInput,
  type SegmentorResult,
  type SegmentorStep,
} from './train/segmentor.js';
export { demoImages, demoSamples, bundledSegmentor } from './train/demo.js';
export { RunDir } from './train/rundir.js';
export { MaskFrequency } from './train/maskfreq.js';
export { buildReport, readFolder, writeReport, type FolderData, type FolderKind } from './report/index.js';
export { EventWriter } from './report/tensorboard.js';
export { writeVesselMaps } from './vessels/api.js';
export {
  FinetuneSchema,
  FT_TASKS,
  TASK_DATA,
  type FinetuneConfig,
  type FinetuneInput,
  type FtTask,
} from './config/finetune.js';
export {
  finetune,
  holdOut,
  imageDsc,
  validate,
  type FinetuneEvents,
  type FinetuneResult,
  type FtEpochRecord,
  type FtStepRecord,
} from './train/finetune.js';
export {
  loadSegmentationModel,
  modelMeta,
  ModelFileError,
  segmentationPredictor,
  segmentationPredictorFromFile,
  type SegmentationModel,
  type SegmentationModelMeta,
} from './model/segmentation.js';
export { overlay, predictFiles, type PredictedFile, type PredictOptions, type PredictResult } from './eval/predict.js';
export {
  checkCocoGt,
  checkCocoResults,
  COCO_STAT_NAMES,
  cocoEvaluate,
  formatSummary as formatCocoSummary,
  readCocoGt,
  readCocoResults,
  type CocoDetection,
  type CocoEvalResult,
  type CocoGt,
} from './detection/coco-eval.js';
export {
  datasetToCocoGt,
  openDetectionDataset,
  parseVocXml,
  patientOf,
  type DetectionDataset,
  type DetectionSample,
} from './detection/dataset.js';
export { DetectionDataSchema, type DetectionDataConfig, type DetectionDataInput } from './config/detection.js';
export {
  finetuneDetection,
  resolveDetectionRun,
  type DetectionFinetuneEvents,
  type DetectionFinetuneResult,
} from './detection/train.js';
export {
  evaluateDetector,
  predictDetector,
  scoreSamples,
  type DetectionEvalOptions,
  type DetectionEvalSummary,
} from './detection/evaluate.js';
export {
  detectFrames,
  detectorMeta,
  loadDetector,
  readFrame as readDetectionFrame,
  type DetectorMeta,
} from './detection/model.js';
export {
  DETECTION_PRESETS,
  DetectionRunSchema,
  type DetectionRunConfig,
  type DetectionRunInput,
} from './config/detection.js';
