// The shape a pg_trickle dashboard JSON must have, built from Grafana's own
// generated schema types (@grafana/schema: the dashboard kind and the panel
// plugins' options). validate.sh wraps each dashboard JSON in
// `(<json>) satisfies DashboardJson` and runs tsc, so every key is checked for
// existence (excess property checks), every value for its type, and every enum
// for its allowed values.
import type {
  Dashboard,
  DataSourceRef,
  FieldConfig,
  FieldConfigSource,
  Panel,
  RowPanel,
} from '@grafana/schema';
import type {
  Options as StatOptions,
} from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type {
  Options as TimeSeriesOptions,
  FieldConfig as TimeSeriesFieldConfig,
} from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type {
  Options as TableOptions,
  FieldConfig as TableFieldConfig,
} from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type {
  Options as StateTimelineOptions,
  FieldConfig as StateTimelineFieldConfig,
} from '@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';

// JSON has no TypeScript enums: a string enum member becomes its string value
// (`${E}`), everything else keeps its type, recursively.
type Json<T> = T extends string
  ? string extends T ? string : `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

// Panel options and field options are saved sparsely (Grafana fills in the
// defaults of the plugin version it runs), so all of their keys are optional.
type JsonPartial<T> = T extends string
  ? string extends T ? string : `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<JsonPartial<U>>
      : T extends object
        ? { [K in keyof T]?: JsonPartial<T[K]> }
        : T;

// A Prometheus query (the dashboard schema types targets only as
// Record<string, unknown>; these are the Prometheus data source's keys).
interface PrometheusTarget {
  refId: string;
  expr: string;
  datasource?: Json<DataSourceRef>;
  legendFormat?: string;
  editorMode?: 'code' | 'builder';
  range?: boolean;
  instant?: boolean;
  exemplar?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  intervalFactor?: number;
  hide?: boolean;
}

type FieldConfigWith<Custom> = Omit<Json<FieldConfigSource>, 'defaults'> & {
  defaults: Omit<Json<FieldConfig>, 'custom'> & { custom?: JsonPartial<Custom> };
};

type PanelBase = Omit<Json<Panel>, 'type' | 'options' | 'fieldConfig' | 'targets'> & {
  targets?: PrometheusTarget[];
};

// The panel types the dashboard uses; add one here (with its options types)
// before using another visualization.
export type PanelJson =
  | (PanelBase & { type: 'stat'; options?: JsonPartial<StatOptions>; fieldConfig?: FieldConfigWith<never> })
  | (PanelBase & { type: 'timeseries'; options?: JsonPartial<TimeSeriesOptions>; fieldConfig?: FieldConfigWith<TimeSeriesFieldConfig> })
  | (PanelBase & { type: 'table'; options?: JsonPartial<TableOptions>; fieldConfig?: FieldConfigWith<TableFieldConfig> })
  | (PanelBase & { type: 'state-timeline'; options?: JsonPartial<StateTimelineOptions>; fieldConfig?: FieldConfigWith<StateTimelineFieldConfig> });

export type RowJson = Omit<Json<RowPanel>, 'panels'> & { panels: PanelJson[] };

export type DashboardJson = Omit<Json<Dashboard>, 'panels'> & {
  panels?: Array<RowJson | PanelJson>;
};
